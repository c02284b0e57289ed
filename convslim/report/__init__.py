"""What comes out: the report (``report``: JSON and Markdown), its deployment tables (``deploy``) and the run's
record (``runinfo``: versions, CPU, command).

Example:
    >>> from convslim.report import Report
    >>> result = compress(model, example, to="dwsep", rank=1)
    >>> isinstance(result.report, Report), result.report.summary()
"""

from convslim.report.report import Report

__all__ = ["Report"]
