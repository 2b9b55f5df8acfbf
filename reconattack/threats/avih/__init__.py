"""The AVIH threat (SPEC §3): a gallery encrypted with Adversarial Visual Information Hiding,
in rooms that do one job each — :mod:`.roles` (who holds which image, the key share),
:mod:`.models` (recognition and key models), :mod:`.encryption` (the victim's encryption),
:mod:`.gallery` (the encrypted gallery on disk), :mod:`.datamodule`, :mod:`.evaluation` (the rows),
:mod:`.threat` (the threat model that puts them together) and :mod:`.reid` (re-identification)."""

from .datamodule import AVIHDataModule
from .evaluation import AVIHEvaluation
from .roles import Role, draw_leaked, encryption_jobs, leaked_count
from .threat import AVIHThreat

__all__ = ["AVIHDataModule", "AVIHEvaluation", "AVIHThreat", "Role", "draw_leaked", "encryption_jobs",
           "leaked_count"]
