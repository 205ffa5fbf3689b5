"""Protocol constants shared by trainers, the broker and workers.

Every message is a ZeroMQ multipart message whose first frame is a msgpack map,
the *header*. ``docs/protocol.md`` specifies each message frame by frame; the
names here are the ones it uses.
"""

from __future__ import annotations

PROTOCOL_VERSION = 1
SUPPORTED_VERSIONS = (1,)

DEFAULT_FRONTEND = "tcp://127.0.0.1:5555"
DEFAULT_BACKEND = "tcp://127.0.0.1:5556"

# Header keys common to every message.
VERSION = "v"
TYPE = "type"
REQ = "req"

# Any peer <-> broker: liveness (rlay/heartbeat.py).
HEARTBEAT = "heartbeat"
HEARTBEAT_INTERVAL = 0.5  # s between pings
HEARTBEAT_LIVENESS = 4  # pings missed before the other side counts as lost: 2 s by default
# A network cut shorter than the expiry (interval x liveness) must cost nothing (protocol 8.5): a peer
# whose connection is still open is lost only after this many more intervals of silence, the time
# its ping path needs to reconnect once the cut heals. A peer counts its broker lost one interval
# later still, so that the broker's verdict (`known: false`, `no_lease`) comes first.
CUT_GRACE_INTERVALS = 3
# The settings a broker may have, which it announces in `registered` and `leased` (its peers adopt
# them, and ignore a value outside these bounds).
MIN_HEARTBEAT_INTERVAL, MAX_HEARTBEAT_INTERVAL = 0.01, 3600.0
MAX_HEARTBEAT_LIVENESS = 1000

# Worker -> broker.
REGISTER = "register"
DISCONNECT = "disconnect"  # also broker -> worker
REPLY = "reply"  # also broker -> trainer
ERROR = "error"  # any direction

# Broker -> worker.
REGISTERED = "registered"

# Trainer -> broker.
LEASE = "lease"
RELEASE = "release"
STATUS = "status"
REPLACE = "replace"  # move LOST slots of a lease to free slots (on_worker_failure="replace")
FLEET = "fleet"  # a supervisor (rlay up) reports the programs it runs; answered with `fleet`

# Trainer -> broker -> worker: the batched calls.
RESET = "reset"
STEP = "step"
CALL = "call"
SET_ATTR = "set_attr"
BATCH_CALLS = (RESET, STEP, CALL, SET_ATTR)

# Broker -> trainer.
LEASED = "leased"
RELEASED = "released"
REPLACED = "replaced"

# Worker modes.
COMMAND_MODE = "command"  # the worker hosts env objects and steps them on request
PUSH_MODE = "push"  # the worker is the env's own process (a game) and answers at its decision points
WORKER_MODES = (COMMAND_MODE, PUSH_MODE)

# Error codes carried in ``error`` messages.
E_BAD_MESSAGE = "bad_message"
E_VERSION = "version"
E_UNKNOWN_TYPE = "unknown_type"
E_REGISTRATION = "registration"
E_LEASE_TIMEOUT = "lease_timeout"
E_SLOT = "slot"
E_NO_LEASE = "no_lease"  # a batched call or replace from a connection that holds no lease (the broker forgot it)
E_ENV = "env_error"
E_TIMEOUT = "timeout"
E_WORKER_LOST = "worker_lost"
E_INTERNAL = "internal_error"
E_LIMIT = "limit"  # a request over one of the broker's limits (broker/limits.py); may carry retry_after

# Env methods that call() must not reach: they have their own messages.
RESERVED_CALLS = ("reset", "step", "close")

# What a launcher tells the programs it starts (they put it in `register`: protocol 5.2).
PROGRAM_ENV, INSTANCE_ENV = "RLAY_PROGRAM", "RLAY_INSTANCE"

# How long a send may block (ZeroMQ blocks a DEALER that has no connection at all, e.g. after a
# refused CURVE handshake) before the peer counts as unreachable (s).
SEND_TIMEOUT = 10.0

# How often idle loops wake to check their stop flag and parent process (ms).
IDLE_POLL_MS = 250
