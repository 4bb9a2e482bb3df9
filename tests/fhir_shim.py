"""TEMPORARY: until fhir-core's mapper is merged, healthsim_state.fhir.mapper is the stand-in."""
import sys
import types

try:
    import healthsim_state.fhir.mapper  # noqa: F401
except ImportError:
    from fhir_standin import StandInMapper

    class FhirMapper(StandInMapper):
        @classmethod
        def from_registry(cls, registry):
            return cls()

    module = types.ModuleType("healthsim_state.fhir.mapper")
    module.FhirMapper = FhirMapper
    sys.modules["healthsim_state.fhir.mapper"] = module
