"""Where the metrics stage's turns go besides the log: Prometheus histograms and OpenTelemetry spans."""
