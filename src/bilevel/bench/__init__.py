"""The benchmark harness: command line, results store and plots. The core never imports it."""
