"""CHOI datasets: the on-disk format and reader/writer (`dataset`), the synthetic
generator (`synth`), builders from video clips and HOI images (`builders`), and the
shipped example inputs (`examples`)."""
