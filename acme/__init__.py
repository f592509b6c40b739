"""acme: run one function many times in parallel and keep every result safe on disk."""
from .errors import ParallelMapError, RemoteTraceback, WorkerDied, CallTimeout
from .inputs import ArgumentMismatchError
from .parallel_map import ParallelMap
from .readers import MissingResultError, find_container, load_call, load_stacked
from .result_spec import ResultShapeError

__version__ = "0.1.0"

__all__ = ["ParallelMap", "ParallelMapError", "RemoteTraceback", "WorkerDied",
           "CallTimeout", "ArgumentMismatchError", "ResultShapeError", "MissingResultError", "find_container", "load_call",
           "load_stacked", "__version__"]
