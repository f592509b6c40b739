"""The front: ``ParallelMap``, its parameters, and the orchestration of one run."""
from __future__ import annotations

import logging
import os
import warnings
from typing import Any, Callable, Optional, Union

from . import validation as check
from .inputs import CallPlan, prepare_input as _prepare_input
from .result_spec import ResultSpec, parse_dtype
from .runner import check_output_dir, execute
from .tasks import dumps

log = logging.getLogger(__name__)

__all__ = ["ParallelMap"]


class ParallelMap:
    """Run one function many times in parallel and keep every result.

    Used as a context manager::

        with ParallelMap(f, [2, 4, 6, 8], 4) as pmap:
            results = pmap.compute()

    calls ``f(2, 4)``, ``f(4, 4)``, ``f(6, 4)`` and ``f(8, 4)`` in parallel.

    Parameters
    ----------
    func : callable
        The function to call. Arguments and return values should be plain Python
        objects or numpy arrays.
    *args
        Positional arguments of ``func``. A list, tuple or (squeezed) 1-D numpy array
        with one element per call is split, call ``i`` getting element ``i``; anything
        else is passed unchanged to every call.
    n_inputs : int or "auto"
        Number of calls. "auto" (default) infers it from the lengths of the list,
        tuple and 1-D array arguments; set it when they are ambiguous, or to call
        ``func`` several times with the same arguments.
    write_worker_results : bool
        True (default): every call's return values are saved to HDF5 files by the
        worker that computed them. False: return values are collected in memory.
    output_dir : str or None
        Folder for result files (``~`` is the home folder); default
        ``ACME_YYYYMMDD-hhmmss-ffffff`` in the current directory. A folder that
        cannot be created (a file on its path, no permission) is refused here.
    cleanup_threshold_days : int or None
        With results on disk and ``output_dir=None``: remove the auto-generated
        ``ACME_YYYYMMDD-hhmmss-ffffff`` folders in the current directory that are
        more than this many whole days old (0: all of them), as esi-acme does.
        With ``setup_interactive`` on a terminal, acme asks first. Folders another
        running acme run holds, links, and anything not named like an
        auto-generated folder are never removed. None (default): nothing is
        removed; more than 20 such folders are reported.
    result_shape : tuple or None
        Shape of the stacked first return values, with one ``None`` marking the axis
        along which calls are stacked (e.g. ``(None, 100)`` for calls returning 100
        values each); ``np.inf`` marks an axis of unknown length (on disk only). In
        memory, calls that return several values give, as in esi-acme, the list
        ``[stacked array, other values of call 0, other values of call 1, ...]``.
    result_dtype : str
        numpy dtype of the stacked results (default ``"float"``, i.e. float64). A
        value it cannot hold (an integer out of range or not exact as a float, a
        finite float that would overflow to inf, bytes that would be cut short)
        fails that call; lower float precision (e.g. ``"float32"``) is fine.
    single_file : bool
        Write every call's results into one HDF5 file instead of one file per call.
    write_pickle : bool
        Pickle return values (one ``.pickle`` file per call) instead of HDF5.
    partition : str
        SLURM partition ("auto": chosen from the memory a dry-run call needs).
    n_workers : int or "auto"
        Number of workers. "auto": the usable cores locally, the ranks under MPI.
    mem_per_worker : str
        Memory per SLURM worker, such as ``"4GB"``; "auto" takes the partition's.
    setup_timeout : int
        Seconds to wait for (SLURM) workers to come up.
    setup_interactive : bool
        Ask on a terminal what to do when workers are late or a dry run finished.
    stop_client : bool or "auto"
        Whether worker pools are stopped when the map ends ("auto": only pools this
        map started).
    verbose : bool or None
        None: progress and warnings; True: also debug details; False: warnings only.
    dryrun : bool
        Run one randomly chosen call first and report its time and memory.
    logfile : bool, str or None
        None: a log file in the output folder when results go to disk; True/False
        force/suppress it; a string names the file.
    backend : str or worker pool
        Where calls run: "auto" (default): MPI inside ``python -m acme.mpi_run``;
        else the running pool of :func:`acme.local_cluster_setup` /
        :func:`acme.slurm_cluster_setup` if there is one; else one SLURM job per
        run where SLURM is usable, this process is not inside a job and the job
        can run the map (mpi4py in this Python, a function the ranks can load;
        ``ACME_AUTO_SLURM=0`` turns that off); else local processes. The choice and
        its reason are logged. Or a name:
        "local", "sequential" (in this process, for debugging), "mpi", "slurm", any
        registered plug-in (:func:`acme.backends.registered_backends`); or a pool
        handle returned by one of the ``*_cluster_setup`` functions.
    timeout : float or None
        Seconds one call may run; a call that runs longer is stopped and recorded as
        failed. Not a parameter of esi-acme.
    resume : bool
        Continue the run in ``output_dir``: only calls without a complete result
        (failed, stopped, never started) run again. The run's function, number of
        calls and arguments must be the same (a fingerprint is kept in the folder:
        the function's code, defaults, closure and the globals it reads, every
        argument's value). Arguments acme cannot fingerprint (locks, open files,
        generators) make resume refuse. Not a parameter of esi-acme.
    **kwargs
        Keyword arguments of ``func``, distributed by the same rules as ``args``
        (a list/tuple keyword counts as one value per call only if ``func``'s default
        for it is not already a list/tuple of the same length).

    Attributes
    ----------
    func : callable
        The function.
    argv : list of list
        One list per positional argument: its per-call values, or ``[value]`` when
        the same value goes to every call.
    kwargv : dict of list
        The same for keyword arguments.
    n_inputs : int
        Number of calls.
    results_container : str or None
        After a run with results on disk: the path of the container file.
    stats : dict
        After a run: what it cost, e.g. ``seconds``, ``first_result_seconds``,
        ``bytes_to_workers`` (bytes really sent to the workers), ``ran`` and
        ``resumed`` (calls run now and found done by ``resume``).

    Raises
    ------
    TypeError
        A parameter of the wrong type, or a function (or argument) that cannot be
        sent to worker processes.
    ValueError
        A parameter with a wrong value, arguments whose number of calls cannot be
        inferred or is 0, or an ``output_dir`` that holds another run.
    acme.ArgumentMismatchError
        ``func`` cannot be called with the arguments given (both a ValueError and a
        TypeError).
    """

    objName = "<ParallelMap>"
    func: Optional[Callable] = None
    argv: Optional[list] = None
    kwargv: Optional[dict] = None
    n_inputs: Optional[int] = None

    def __init__(self, func: Callable, *args: Any, n_inputs: Union[int, str] = "auto",
                 write_worker_results: bool = True,
                 cleanup_threshold_days: Optional[int] = None,
                 output_dir: Optional[str] = None,
                 result_shape: Optional[tuple] = None, result_dtype: str = "float",
                 single_file: bool = False, write_pickle: bool = False,
                 partition: str = "auto", n_workers: Union[int, str] = "auto",
                 mem_per_worker: str = "auto", setup_timeout: int = 60,
                 setup_interactive: bool = True, stop_client: Union[bool, str] = "auto",
                 verbose: Optional[bool] = None, dryrun: bool = False,
                 logfile: Optional[Union[bool, str]] = None, backend: str = "auto",
                 timeout: Optional[float] = None, resume: bool = False,
                 **kwargs: Any) -> None:
        if not callable(func):
            raise TypeError(f"`func` (the first argument of ParallelMap) has to be a "
                            f"callable, not {type(func).__name__} {func!r}")
        n_inputs = check.check_auto_or_int(n_inputs, "n_inputs")
        self.write_worker_results = check.check_bool(write_worker_results,
                                                     "write_worker_results")
        self.cleanup_threshold_days = check.check_threshold_days(cleanup_threshold_days)
        self.output_dir = check.check_path(output_dir, "output_dir")
        self.resume = check.check_bool(resume, "resume")
        self.single_file = check.check_bool(single_file, "single_file")
        self.write_pickle = check.check_bool(write_pickle, "write_pickle")
        self.result_spec = self._check_result_shape(result_shape, result_dtype)
        self.result_shape = result_shape
        self.result_dtype = result_dtype
        if not isinstance(partition, str):
            raise TypeError(f"`partition` has to be 'auto' or the name of a SLURM "
                            f"partition (str), not {type(partition).__name__} {partition!r}")
        if not partition.strip():
            raise ValueError("`partition` has to be 'auto' or the name of a SLURM "
                             "partition, not an empty string")
        self.partition = partition
        self.n_workers = check.check_auto_or_int(n_workers, "n_workers")
        self.mem_per_worker = mem_per_worker
        self.mem_per_worker_mb = check.parse_memory(mem_per_worker, "mem_per_worker")
        self.setup_timeout = check.check_positive_number(setup_timeout, "setup_timeout")
        self.setup_interactive = check.check_bool(setup_interactive, "setup_interactive")
        self.stop_client = check.check_auto_or_bool(stop_client, "stop_client")
        self.verbose = check.check_optional_bool(verbose, "verbose")
        self.dryrun = check.check_bool(dryrun, "dryrun")
        self.logfile = check.check_logfile(logfile)
        self.timeout = check.check_positive_number(timeout, "timeout", allow_none=True)
        self.backend_name = self._check_backend(backend)
        self._notes: list[str] = []  # warnings given here, for the run's log file
        self._warn_about_ignored_options()
        kwargs = self._old_esi_acme_names(func, kwargs)
        if self.resume and (self.output_dir is None or not self.write_worker_results):
            raise ValueError("resume=True continues a run on disk: give the `output_dir` "
                             "of that run (and keep write_worker_results=True)")
        if self.output_dir is not None and self.write_worker_results:
            check_output_dir(os.path.abspath(self.output_dir), self.resume)
            check.check_creatable_folder(self.output_dir, "output_dir")
        elif self.write_worker_results:
            check.check_creatable_folder(os.getcwd(), "output_dir")

        self.prepare_input(func, n_inputs, *args, **kwargs)
        if self.backend_name != "sequential":
            # A function that cannot reach a worker is an error before anything runs.
            dumps(func, f"The function {getattr(func, '__name__', func)!r}")

        self.results_container: Optional[str] = None
        self.stats: dict = {}
        self._backend = None
        self._user_pool = None
        if self.write_worker_results and self.output_dir is None:
            self._cleanup_old_folders()

    # ----------------------------------------------------------------- checks
    def _check_result_shape(self, result_shape: Any, result_dtype: Any) -> Optional[ResultSpec]:
        if result_shape is None:
            parse_dtype(result_dtype)
            return None
        spec = ResultSpec(result_shape, result_dtype)
        if spec.has_inf and self.single_file and getattr(self, "resume", False):
            raise ValueError("resume=True cannot continue a single_file run whose "
                             "result_shape has np.inf; give the axis its length")
        if spec.has_inf and not self.write_worker_results:
            raise ValueError("`result_shape` may use np.inf only when results are "
                             "written to disk (write_worker_results=True); in memory "
                             "every axis needs a length")
        return spec

    @staticmethod
    def _check_backend(backend: Any) -> str:
        from .backends import is_registered, registered_backends
        if hasattr(backend, "backend_name") and hasattr(backend, "close"):
            return backend  # a running worker pool (acme.local_cluster_setup, ...)
        if not isinstance(backend, str):
            raise TypeError(f"`backend` has to be 'auto' or one of {registered_backends()}, "
                            f"not {type(backend).__name__} {backend!r}")
        if backend != "auto" and not is_registered(backend):
            raise ValueError(f"`backend` has to be 'auto' or one of {registered_backends()}, "
                             f"not {backend!r}")
        return backend

    def _warn(self, message: str) -> None:
        """A warning now, and a line in the run's log file once it is open."""
        warnings.warn(message, stacklevel=4)
        self._notes.append(message)

    def _warn_about_ignored_options(self) -> None:
        if self.write_pickle and self.single_file:
            raise ValueError("`write_pickle=True` and `single_file=True` cannot be "
                             "combined: pickled results are one file per call")
        if not self.write_worker_results:
            for name in ("write_pickle", "single_file"):
                if getattr(self, name):
                    self._warn(f"`{name}=True` has no effect with "
                               "write_worker_results=False (results stay in memory)")
            if self.output_dir is not None:
                self._warn("`output_dir` has no effect with write_worker_results="
                           "False (results stay in memory)")
            if self.cleanup_threshold_days is not None:
                self._warn("`cleanup_threshold_days` has no effect with "
                           "write_worker_results=False (no folders are made)")
        elif self.cleanup_threshold_days is not None and self.output_dir is not None:
            self._warn("`cleanup_threshold_days` has no effect with an `output_dir`: "
                       "only auto-generated ACME_<time> folders are cleaned up")
        if self.write_pickle and self.result_spec is not None:
            self._warn("`result_shape` has no effect with write_pickle=True: pickled "
                       "results are not stacked")

    def _cleanup_old_folders(self) -> None:
        """esi-acme's cleanup of old auto-generated folders, where ours would go."""
        import sys
        from .logs import run_logging
        try:
            interactive = self.setup_interactive and sys.stdin is not None \
                and sys.stdin.isatty()
        except (AttributeError, ValueError, OSError):  # a closed or replaced stdin
            interactive = False
        with run_logging(self.verbose, None):  # the run's own logging starts later
            check.cleanup_old_folders(os.getcwd(), self.cleanup_threshold_days,
                                      interactive)

    def _old_esi_acme_names(self, func: Callable, kwargs: dict) -> dict:
        """Older esi-acme versions called n_workers/mem_per_worker n_jobs/mem_per_job:
        accept those names (with a warning) unless ``func`` itself has such a parameter."""
        import inspect
        try:
            params = inspect.signature(func).parameters
        except (TypeError, ValueError):
            params = {}
        for old, new in (("n_jobs", "n_workers"), ("mem_per_job", "mem_per_worker")):
            if old in kwargs and old not in params:
                value = kwargs.pop(old)
                warnings.warn(f"`{old}` is the old esi-acme name of `{new}`; use `{new}`",
                              FutureWarning, stacklevel=4)
                if new == "n_workers":
                    self.n_workers = check.check_auto_or_int(value, old)
                else:
                    self.mem_per_worker = value
                    self.mem_per_worker_mb = check.parse_memory(value, old)
        return kwargs

    # ------------------------------------------------------------- seed API
    def prepare_input(self, func: Callable, n_inputs: Union[int, str], *args: Any,
                      **kwargs: Any) -> None:
        """Check ``func`` against its arguments and work out the calls.

        Sets ``func``, ``n_inputs``, ``argv`` and ``kwargv``. Raises ValueError when
        the number of calls cannot be inferred or does not fit the arguments, and
        an error that is both ValueError and TypeError when ``func`` cannot be called
        with them.
        """
        plan = _prepare_input(func, n_inputs, *args, **kwargs)
        self._plan: CallPlan = plan
        self.func = func
        self.n_inputs = plan.n_inputs
        self.argv = plan.argv
        self.kwargv = plan.kwargv

    def __enter__(self) -> "ParallelMap":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.cleanup()

    def cleanup(self) -> None:
        """Stop worker pools as ``stop_client`` says: "auto" stops only pools this map
        started, True also a pool the user started, False none."""
        from .clusters import cluster_cleanup
        if self._user_pool is not None and self.stop_client is True:
            cluster_cleanup(self._user_pool)
        self._user_pool = None
        if self._backend is not None and self.stop_client is not False:
            self._backend.close()
        self._backend = None

    # --------------------------------------------------------------- running
    def _make_backend(self):
        """The backend of this map. "auto" takes only one that can run it and says
        which and why in one INFO line; a backend that cannot run it here raises now,
        before anything is written or submitted."""
        from .backends import choose_auto_backend, get_backend
        from .clusters import _register
        from .logs import run_logging
        n_workers = None if self.n_workers == "auto" else self.n_workers
        options = dict(partition=self.partition, mem_per_worker=self.mem_per_worker,
                       setup_timeout=self.setup_timeout,
                       setup_interactive=self.setup_interactive,
                       stop_client=self.stop_client)
        pool = None if isinstance(self.backend_name, str) else self.backend_name
        name = pool.backend_name if pool is not None else self.backend_name
        choice = None
        if name == "auto":
            name, pool, reason = choose_auto_backend(self.func)
            choice = f"backend auto: {name} ({reason})"
            with run_logging(self.verbose, None):  # the run's own logging starts later
                log.info("%s", choice)
        backend_class = get_backend(name)
        if pool is not None:
            self._user_pool = pool  # (stop_client=True stops it even if it cannot run)
        check = getattr(backend_class, "check_can_run", None)
        if check is not None:
            check(self.func, pool)
        if pool is not None:
            backend = backend_class(n_workers=n_workers, pool=pool, **options)
        elif name == "local" and self.stop_client is False:
            # stop_client=False: the workers stay up for later maps, which then use
            # them too (rather than each starting and leaving a pool of its own)
            from .backends.local import LocalPool, usable_cores
            from .clusters import current_pool
            own = current_pool()
            wanted = n_workers or usable_cores()
            if not isinstance(own, LocalPool) or own.n_workers < wanted:
                own = _register(LocalPool(wanted, self.setup_timeout or 60.0))
            backend = backend_class(n_workers=n_workers, pool=own, **options)
        else:
            backend = backend_class(n_workers=n_workers, **options)
        backend.auto_choice = choice  # for the run's log file
        return backend

    def compute(self, debug: bool = False) -> Union[list, Any]:
        """Run every call and return the results.

        Parameters
        ----------
        debug : bool
            False (default): calls run on the map's backend. True: as esi-acme's
            debugging path, every call runs in this process, one after another,
            and the first call that raises stops the run with its own exception
            and traceback, so ``breakpoint()``, ``pdb.pm()`` or Jupyter's
            ``%debug`` land in the function. Results of the calls before it are
            kept as usual.

        Returns
        -------
        list or numpy.ndarray or None
            With results on disk (default): the result file of each call, in input
            order (``[container]`` with ``single_file``); ``results_container`` names
            the container. With ``write_worker_results=False``: the return values in
            input order, or, with ``result_shape``, one array stacking every call's
            first return value; when calls return several values, a list as
            esi-acme gives it: that array, then the other return values of call 0,
            of call 1, and so on. None if the user stopped after a dry run.

        Raises
        ------
        ParallelMapError
            After every call ran, if any failed: it names the failed calls and has
            the first failure (original type, remote traceback) as its cause. With
            the sequential backend its traceback ends in the function's line.
        Exception
            With ``debug=True``: the exception of the first call that raised.
        """
        check.check_bool(debug, "debug")
        if debug:
            from .backends.sequential import SequentialBackend
            from .logs import run_logging
            with run_logging(self.verbose, None):  # the run's own logging starts later
                log.warning("debug=True: the %d calls run one after another in this "
                            "process", self.n_inputs)
            return execute(self, SequentialBackend(n_workers=1, debug=True))
        if self._backend is None:
            self._backend = self._make_backend()
        return execute(self, self._backend)
