"""Online measurement: the experiment report over the exposure log (report.py) and the closed-loop
shopper simulator (simulator.py). No grpc in report.py; the commands that read the services are in
bundlerec/commands."""
