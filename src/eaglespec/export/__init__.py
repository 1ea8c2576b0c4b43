"""Export eaglespec drafts to the layouts SGLang, vLLM, speculators, the reference EAGLE and llama.cpp (GGUF) load, and import
reference EAGLE and speculators checkpoints; every file is checked strictly (`layout.check_tensors`)."""

from eaglespec.export.exporter import ExportReport, export_draft
from eaglespec.export.importer import ImportReport, import_draft, read_weights
from eaglespec.export.llamacpp import GGUFExportReport, export_gguf
from eaglespec.export.layout import FORMATS, IMPORT_FORMATS, TensorSpec, check_tensors, expected_tensors

__all__ = [
    "FORMATS",
    "IMPORT_FORMATS",
    "ExportReport",
    "GGUFExportReport",
    "ImportReport",
    "TensorSpec",
    "check_tensors",
    "expected_tensors",
    "export_draft",
    "export_gguf",
    "import_draft",
    "read_weights",
]
