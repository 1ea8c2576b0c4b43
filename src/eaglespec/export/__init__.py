"""Export eaglespec drafts to the layouts SGLang, vLLM, speculators and the reference EAGLE load, and import
reference EAGLE and speculators checkpoints; every file is checked strictly (`layout.check_tensors`)."""

from eaglespec.export.exporter import ExportReport, export_draft
from eaglespec.export.importer import ImportReport, import_draft, read_weights
from eaglespec.export.layout import FORMATS, IMPORT_FORMATS, TensorSpec, check_tensors, expected_tensors

__all__ = [
    "FORMATS",
    "IMPORT_FORMATS",
    "ExportReport",
    "ImportReport",
    "TensorSpec",
    "check_tensors",
    "expected_tensors",
    "export_draft",
    "import_draft",
    "read_weights",
]
