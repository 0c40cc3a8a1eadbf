"""`python -m comicnb.corpus.synth`: the generator's command line on its own."""

import argparse
import sys

from comicnb.corpus import synth

parser = argparse.ArgumentParser(prog="python -m comicnb.corpus.synth", description=synth.__doc__.splitlines()[0])
synth.add_arguments(parser)
sys.exit(synth.main(parser.parse_args()))
