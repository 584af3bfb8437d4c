"""Batch alignment: ``ggro align INPUT --output OUTPUT`` decodes every row of a JSONL, CSV or Parquet file with
GGRO, on one process or on a Ray Data actor pool (:mod:`ggro.distributed`), and can be resumed after an
interruption (see :mod:`ggro.align.data` for the file formats and the journal)."""

from .data import NESTED_COLUMNS, OUTPUT_COLUMNS, RESULT_COLUMNS, AlignInputError, InputRow, OutputFile, read_input
from .decode import Aligner
from .job import AlignSummary, run_align

__all__ = [
    "NESTED_COLUMNS",
    "OUTPUT_COLUMNS",
    "RESULT_COLUMNS",
    "AlignInputError",
    "AlignSummary",
    "Aligner",
    "InputRow",
    "OutputFile",
    "read_input",
    "run_align",
]
