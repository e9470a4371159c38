"""Process instances: a function's handler in worker processes forked from a warm parent.

- ``warm``: the warm parent (multiprocessing's forkserver with the app imported), ``locate``;
- ``frames``: the msgpack messages parent and workers exchange (no pickle);
- ``worker``: what runs in an instance, its Context's ``ChannelBackend``;
- ``parent``: the parent's view of an instance, and how its requests are served;
- ``pool``: ``ProcessPool``, the instances of one function;
- ``executor``: ``ProcessExecutor``, the Dispatcher's Executor over a pool.

The forkserver imports this package first (see ``warm.start_warm_parent``).
"""

from swell.core.outcome import Outcome
from swell.runtime.process.executor import ProcessExecutor
from swell.runtime.process.parent import InstanceInfo, PoolBackend
from swell.runtime.process.pool import ProcessPool
from swell.runtime.process.warm import locate, locate_app
from swell.runtime.process.worker import find_function

__all__ = ["InstanceInfo", "Outcome", "PoolBackend", "ProcessExecutor", "ProcessPool",
           "find_function", "locate", "locate_app"]
