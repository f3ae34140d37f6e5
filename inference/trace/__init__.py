"""What a run leaves behind: its records (records.py), the trace as a file (files.py: JSON read back
checked, CSV, sweeps) and as a Perfetto timeline (perfetto.py). The records and file functions are
re-exported here; this package imports no torch."""
from inference.trace.files import SWEEP_SCHEMA, check_trace, read_trace, steps_csv, sweep_from_json, sweep_to_json, \
    trace_from_dict
from inference.trace.records import TRACE_SCHEMA, ClassSnapshot, DeviceInfo, ModelInfo, Goodput, Phase, PoolSnapshot, RunSpan, \
    Step, StopReason, Summary, Trace, cpu_wait_share, dtype_itemsize, percentile

__all__ = ["SWEEP_SCHEMA", "TRACE_SCHEMA", "ClassSnapshot", "DeviceInfo", "Goodput", "ModelInfo", "Phase", "PoolSnapshot", "RunSpan", "Step",
           "StopReason", "Summary", "Trace", "check_trace", "cpu_wait_share", "dtype_itemsize", "percentile", "read_trace",
           "steps_csv", "sweep_from_json", "sweep_to_json", "trace_from_dict"]
