"""The model zoo: real topologies that snncc must convert, or reject with every offending node named."""
