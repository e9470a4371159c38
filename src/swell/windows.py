"""Event-time windows with watermarks, allowed lateness, updates and retractions.

::

    from swell.windows import WindowOperator, Tumbling, Sum

    op = WindowOperator(Tumbling("1m"), Sum("amount"), allowed_lateness="5m", late="update")
    panes = op.add(key, value, time)     # time: datetime, or float seconds since the epoch
    panes += op.advance(watermark)       # watermark: datetime or float seconds; math.inf closes all

The semantics, and where they differ from Apache Beam's, are in ``swell.patterns.windows``.
"""

from swell.patterns.windows import *  # noqa: F403  (the public names: its __all__)
from swell.patterns.windows import __all__ as __all__
