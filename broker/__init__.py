"""The rlay broker. Depends on the wire layer in ``rlay``, never on ``workers``."""

from broker.broker import Broker, serve

__all__ = ["Broker", "serve"]
