"""``python -m upres.cli`` (and ``torchrun -m upres.cli``) runs the ``upres`` command."""

from upres.cli.app import main_entry

if __name__ == "__main__":
    main_entry()
