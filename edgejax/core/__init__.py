"""The simulation kernel: state layout, node data, local update, round loop, results."""
