"""The store's own tables: every read and write of them, bound to one session
(one transaction) and the mapping set in force.

- :mod:`.scenarios`: scenarios, their tags and their versions
  (:class:`Scenarios`, what an operation of the manager is handed);
- :mod:`.rows`: the rows of one type of one scenario, every version of them
  (:class:`TypeRows`), and the overwrite and add-by-key algorithms.

Nothing else writes SQL against these tables (:mod:`healthsim_state.layout`
and :mod:`healthsim_state.evolution` own the DDL). The SQL is the portable
subset both backends speak, with ``?`` placeholders; identifiers come only
from validated mappings, travel bare and are quoted where the SQL is
written; values always travel as parameters.
"""

from .rows import Changes, Staged, TypeRows
from .scenarios import Scenarios, new_scenario_id, not_found

__all__ = ["Changes", "Scenarios", "Staged", "TypeRows", "new_scenario_id", "not_found"]
