"""pharmafl: regulatory-grade, auditable federated learning for drug-target interaction."""

__version__ = "0.1.0"
