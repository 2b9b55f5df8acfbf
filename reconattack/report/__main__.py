"""``python -m reconattack.report DIR``: the report of a run or multirun directory
(:func:`reconattack.report.cli.main`)."""

from reconattack.report.cli import main

main()
