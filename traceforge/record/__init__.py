"""Record: the run directory (run.json + timeline/part-*.parquet + telemetry.parquet)."""

from traceforge.record.manifest import RunManifest
from traceforge.record.recorder import TimelineRecorder
from traceforge.record.writer import TimelineWriter, read_timeline

__all__ = ["RunManifest", "TimelineRecorder", "TimelineWriter", "read_timeline"]
