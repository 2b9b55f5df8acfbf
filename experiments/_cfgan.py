"""Shared by the CFGAN ablation recipes (CFGAN paper Tables III-VI).

A row of an ablation table is one model. At paper scale it is trained on CelebA-HQ (the paper's
ablation experiment file, ``conf/experiment/cfgan_celebahq_*.yaml``), on LSUN bird and LSUN dining
room (the same change applied to ``cfgan_lsun_*``), and evaluated on FFHQ with the CelebA-HQ run
of the same seed (``cfgan_ffhq_eval``, test only). At demo scale the same change is applied to the
CPU demo (the default experiment: 100 LFW faces of scikit-image, 64x64), which stands in for all
four datasets. ``tests/test_recipes.py`` checks that a row composes to the same networks, losses
and stages on every dataset.
"""

from __future__ import annotations

from dataclasses import dataclass

from reconattack.engine.recipes import Checkpoint, Scale, Sweep

#: the paper's column order
DATASETS = ("celebahq", "ffhq", "lsun_bird", "lsun_dining_room")
LSUN = ("lsun_bird", "lsun_dining_room")


@dataclass(frozen=True)
class Row:
    """One row of a CFGAN ablation table.

    Attributes:
        name: the row's multirun directory (``<dataset>/<name>``).
        label: the row's name in the paper's table, e.g. ``w/o fine net``; the runs get it as
            ``attack.label``, the report's name for their row.
        celebahq: the overrides of the row on CelebA-HQ (the paper's ablation experiment file).
        change: the same model from any other CFGAN paper experiment (``cfgan_lsun_*``,
            ``cfgan_ffhq_eval``).
        demo: the same change on the CPU demo; None where it cannot run offline (a loss that needs
            pretrained VGG19 weights).
        demo_label: the demo row's label where the paper's would not be true of it (the demo's
            loss is not the paper's); None: ``label``.
        stage: the final stage, whose checkpoint the FFHQ evaluation loads.
    """

    name: str
    label: str
    celebahq: tuple[str, ...]
    change: tuple[str, ...]
    demo: tuple[str, ...] | None
    stage: str = "fine"
    demo_label: str | None = None  # where the demo's row is not the paper's (another loss)

    def labelled(self, overrides: tuple[str, ...], demo: bool = False) -> tuple[str, ...]:
        label = self.demo_label if demo and self.demo_label else self.label
        return (*overrides, f'attack.label="{label}"')


def no_sift(name: str, label: str, demo: tuple[str, ...] = (), demo_label: str | None = None) -> Row:
    """CFGAN without the sift loss (``cfgan_celebahq_no_sift``): the reference row of Tables
    III-V and Table VI's L_pix+per+adv (c&f) row (the paper's numbers of those rows are equal)."""
    return Row(name, label, celebahq=("+experiment=cfgan_celebahq_no_sift",), change=("loss.sift=0.0",),
               demo=demo, demo_label=demo_label)


def paper_scale(rows: tuple[Row, ...], about: str, datasets: tuple[str, ...] = DATASETS,
                seeds: str = "0") -> Scale:
    """Every row on every dataset of ``datasets`` (CelebA-HQ first: FFHQ evaluates its runs);
    one report per dataset, in the paper's column order. The paper gives one number per cell,
    hence one seed by default."""
    sweeps = []
    ffhq = "ffhq" in datasets
    if "celebahq" in datasets:
        sweeps += [Sweep(f"celebahq/{r.name}", r.labelled(r.celebahq), by_seed=ffhq) for r in rows]
    if ffhq:
        for r in rows:
            unload = () if r.stage == "fine" else ("attack.checkpoints.fine=null",)
            sweeps.append(Sweep(f"ffhq/{r.name}", ("+experiment=cfgan_ffhq_eval", *r.labelled(r.change), *unload,
                                                  Checkpoint(r.stage, f"celebahq/{r.name}"))))
    for dataset in (d for d in LSUN if d in datasets):
        sweeps += [Sweep(f"{dataset}/{r.name}", (f"+experiment=cfgan_{dataset}", *r.labelled(r.change)))
                   for r in rows]
    reports = tuple(d for d in DATASETS if d in datasets)
    return Scale(sweeps=tuple(sweeps), reports=reports, seeds=seeds, about=about)


def demo_scale(rows: tuple[Row, ...], about: str, seeds: str = "0") -> Scale:
    """The rows that run offline, on the CPU demo (``faces/<row>``), one report."""
    sweeps = tuple(Sweep(f"faces/{r.name}", r.labelled(r.demo, demo=True)) for r in rows if r.demo is not None)
    return Scale(sweeps=sweeps, reports=("faces",), seeds=seeds, about=about)
