"""Save the sample scenario into the default database, list it, load it back.

Run from the repository root after installing: ``python3 examples/quickstart.py``.
The database is ``$HEALTHSIM_DB`` if set, else ``~/.healthsim/healthsim.duckdb``.
"""

import json
from pathlib import Path

from healthsim_state import StateManager

sample = json.loads((Path(__file__).parent / "sample-scenario.json").read_text())

with StateManager() as sm:
    scenario_id = sm.save_scenario("sample", sample, description="The README's sample scenario",
                                   tags=["example"], overwrite=True)
    print(f"saved 'sample' ({scenario_id}) to {sm.db_path}")
    for item in sm.list_scenarios(tag="example"):
        print(f"  {item['name']:<12} {item['entity_count']:>4} entities  updated {item['updated_at']:%Y-%m-%d %H:%M} UTC")
    loaded = sm.load_scenario("sample")
    counts = {kind: len(items) for kind, items in loaded["entities"].items() if items}
    print(f"loaded back: {counts}")
    first = loaded["entities"]["patient"][0]
    print(f"first patient, canonical shape: {first['name']['given']} {first['name']['family']}, "
          f"born {first['birthDate']}, postal code {first['address']['postalCode']}")
