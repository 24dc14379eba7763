"""Catalogue updates without retraining: new items placed into a learnt tree, retired items
kept out of every answer, each update written as a complete artifact that `trainer publish`
publishes and the running service hot-reloads.

inputs.py       the item lists (NEW.csv, GONE.csv) and recent events, checked at the boundary
placement.py    where a new item goes (co-consumed items, its category, popularity) and what
                its row is initialised from; free leaves and how the tree grows when full
scorer_table.py the embedding table inside scorer.onnx: read it, grow it, check the grown graph
                against the old one on every row they share
update.py       add_items / retire_items: artifact in, complete new artifact out
"""
