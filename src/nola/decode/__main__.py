"""`python -m nola.decode`: see `nola.decode.cli`."""

from nola.decode.cli import run

if __name__ == "__main__":
    run()
