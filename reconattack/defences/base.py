"""What every defence config shares (``conf/defence/*.yaml``)."""

#: keys of a defence config that describe it rather than set it: its name, label, the report's axis
#: labels and the order of values that are not numbers
META_KEYS = frozenset({"name", "label", "labels", "order", "report"})
