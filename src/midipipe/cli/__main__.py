"""`python -m midipipe.cli ...`"""

from midipipe.cli import main

main()
