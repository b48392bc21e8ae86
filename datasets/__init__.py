"""Video clip datasets: decoding, clip sampling, transforms and annotation parsers."""
