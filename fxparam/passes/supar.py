"""SμPar pass (placeholder module; implemented in its own issue)."""
