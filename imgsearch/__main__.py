"""`python -m imgsearch ...` runs the command line."""

from imgsearch.cli import main

main()
