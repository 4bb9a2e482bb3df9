"""healthsim-state: save, load and query HealthSim scenarios in DuckDB.

>>> from healthsim_state import StateManager
>>> with StateManager("demo.duckdb") as sm:                        # doctest: +SKIP
...     sid = sm.save_scenario("demo", {"patients": [{"name": {"given": "Ana"}}]})
...     sm.load_scenario("demo")["entities"]["patient"]
"""

from .errors import (
    AmbiguousScenarioError,
    DatabaseLockedError,
    EntityNotFoundError,
    FhirInputError,
    FhirMappingError,
    HealthSimError,
    IncompatibleDatabaseError,
    MappingDriftWarning,
    MappingError,
    MissingExtraError,
    Problem,
    ReadOnlyError,
    ScenarioExistsError,
    ScenarioNotFoundError,
    SchemaChangeError,
    ServerConnectionError,
    StoreError,
    StoreNotFoundError,
    TransactionConflictError,
    UnknownEntityTypeError,
    ValidationError,
    VersionNotFoundError,
)
from .manager import (
    StateManager,
    delete_scenario,
    list_scenarios,
    load_scenario,
    plan_schema_changes,
    save_scenario,
)

__all__ = [
    "StateManager",
    "save_scenario",
    "load_scenario",
    "list_scenarios",
    "delete_scenario",
    "plan_schema_changes",
    "SchemaChangeError",
    "MappingDriftWarning",
    "HealthSimError",
    "ValidationError",
    "MappingError",
    "Problem",
    "ScenarioExistsError",
    "ScenarioNotFoundError",
    "StoreError",
    "DatabaseLockedError",
    "IncompatibleDatabaseError",
    "StoreNotFoundError",
    "ReadOnlyError",
    "ServerConnectionError",
    "MissingExtraError",
    "TransactionConflictError",
    "AmbiguousScenarioError",
    "VersionNotFoundError",
    "UnknownEntityTypeError",
    "EntityNotFoundError",
    "FhirMappingError",
    "FhirInputError",
]

__version__ = "0.1.0"
