from tests.data.helpers import mirror, short_tmp, unprivileged  # noqa: F401  (fixtures)
