"""``upres auto``: a competition folder and a wall-clock budget in, the best submission the budget
buys out. One module per phase; ``driver.run_auto`` runs them top to bottom."""

from upres.auto.driver import run_auto
from upres.auto.journal import AutoError, AutoOptions, AutoResult

__all__ = ["AutoError", "AutoOptions", "AutoResult", "run_auto"]
