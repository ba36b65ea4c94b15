"""Run reports: ``write_report(run_dir)`` (self-contained HTML) and ``print_summary(run_dir)`` (terminal)."""

from posttrain.report.html import write_report
from posttrain.report.terminal import print_summary

__all__ = ["write_report", "print_summary"]
