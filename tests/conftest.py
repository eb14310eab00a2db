"""Root conftest: fixtures shared by every test directory."""

pytest_plugins = ["localcluster.fixtures", "e2e.fixtures"]
