"""An app whose system check always fails, for the start-up error tests."""
