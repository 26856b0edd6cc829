"""What a run tells a person: the per-task table printed by `tive select`, and `RUN/report.html`.

numpy and Pillow only (no torch): a report is rebuilt from the run directory's files alone (`tive report RUN`).
"""

from tive.report.page import REPORT_FILE, write_report
from tive.report.table import task_table

__all__ = ["REPORT_FILE", "task_table", "write_report"]
