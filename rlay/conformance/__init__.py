"""Conformance: the env every worker implementation hosts, and the suite that certifies it.

``rlay conformance -- CMD ...`` (rlay/conformance/suite.py) drives a worker under test and
compares it with SyncVectorEnv over :class:`ConformanceEnv` (docs/protocol.md, Appendix B).
"""

from rlay.conformance.env import ENV_ID, ConformanceEnv

__all__ = ["ENV_ID", "ConformanceEnv"]
