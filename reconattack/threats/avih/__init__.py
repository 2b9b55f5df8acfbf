"""The AVIH threat (SPEC §3): a gallery encrypted with Adversarial Visual Information Hiding,
in rooms that do one job each — :mod:`.roles` (who holds which image, the key share),
:mod:`.models` (recognition and key models), :mod:`.encryption` (the victim's encryption),
:mod:`.gallery` (the encrypted gallery on disk), :mod:`.datamodule`, :mod:`.evaluation` (the rows),
:mod:`.threat` (the threat model that puts them together) and :mod:`.reid` (re-identification).

The names below are loaded when first used (PEP 562), so that importing one room (e.g.
:mod:`.encryption`, which ``benchmarks/gpu_check.py`` runs with PyTorch and Lightning alone) does
not import the others and their dependencies."""

from importlib import import_module

#: public name -> the room that defines it
_ROOMS = {"AVIHDataModule": "datamodule", "AVIHEvaluation": "evaluation", "AVIHThreat": "threat",
          "Role": "roles", "draw_leaked": "roles", "encryption_jobs": "roles", "leaked_count": "roles"}


def __getattr__(name: str):
    if name in _ROOMS:
        return getattr(import_module(f"{__name__}.{_ROOMS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_ROOMS)
