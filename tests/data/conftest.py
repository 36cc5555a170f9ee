from tests.data.helpers import mirror, unprivileged  # noqa: F401  (fixtures)
