"""One thin module per MLflow entry point: read parameters, call the library, log."""
