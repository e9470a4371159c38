"""Event-time windows: a pure operator (events and watermarks in, panes out) and watermarks.

The model is Apache Beam's (its programming guide, and the "Streaming 101/102" articles). Where
swell differs, or decides what Beam leaves open:

- A watermark ``W`` means no more events with time ``< W``; a window ``[start, end)`` fires its
  on-time pane when ``W >= end`` (Beam: when ``W`` passes the window's last instant, the same for
  half-open windows), only if it holds data. An event is late for a window when ``W >= end`` already;
  it is accepted while ``W < end + allowed_lateness``, and dropped from ``W >= end +
  allowed_lateness`` on, when the window's state is freed.
- Triggers are fixed: early panes every ``early_every`` of processing time (one clock for all
  windows, started by the first ``now`` seen, where Beam starts one per pane), an on-time pane, and
  one late pane per accepted late event. Panes accumulate; ``late="retract"`` is Beam's accumulating
  and retracting mode (each pane after the first comes after a retraction of the one before).
- Session windows are judged late or dropped on the event's own window ``[t, t + gap)`` (as Beam);
  a merged session is a new window (its panes count from index 0) and, with ``late="retract"``, the
  sessions it replaces are retracted if they had emitted panes.
- Late counts are per event and window: an event in three sliding windows counts three times, and
  with ``late="side"`` gives one ``LateEvent`` per window it is too late for.
- Times are float seconds since the epoch (a naive ``datetime`` is taken as UTC). Fixed windows are
  aligned to the epoch.
"""

from swell.patterns.windows.aggregates import Aggregate, Count, Max, Mean, Min, Reducer, Sum
from swell.patterns.windows.operator import WindowOperator
from swell.patterns.windows.panes import LateEvent, Pane, WindowStats, WindowValueError
from swell.patterns.windows.watermarks import BoundedOutOfOrder, GroupWatermark
from swell.patterns.windows.windows import Session, Sliding, Tumbling

__all__ = [
    "Aggregate",
    "BoundedOutOfOrder",
    "Count",
    "GroupWatermark",
    "LateEvent",
    "Max",
    "Mean",
    "Min",
    "Pane",
    "Reducer",
    "Session",
    "Sliding",
    "Sum",
    "Tumbling",
    "WindowOperator",
    "WindowStats",
    "WindowValueError",
]
