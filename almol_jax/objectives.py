"""The training objectives' names: the one home of the list and of which of them score pairs.

``train/losses.py`` implements each (its registry is checked against this list), the config's
``objective.name`` accepts exactly these, and the data pipeline asks ``PAIR_OBJECTIVES`` whether a
run's rows need a rejected response (``data.prefix_sharing: auto``). A module of its own at the
package root, importing nothing, so the config and the data pipeline need not import the
training package (which imports them) for a list of names.
"""

from __future__ import annotations

OBJECTIVES = ("cpo", "sft", "dpo", "ipo", "simpo", "hinge")
# the objectives that score a chosen against a rejected response (all but sft)
PAIR_OBJECTIVES = tuple(name for name in OBJECTIVES if name != "sft")
