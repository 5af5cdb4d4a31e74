"""What the tests share, so that no test module imports another: real servers on port 0
(servers.py), services as processes (processes.py), real databases (databases.py), the test shops
and models (shops.py, models.py), request factories (factories.py) and waiting for a condition
instead of sleeping (servers.eventually). Fixtures built from these live in tests/conftest.py."""
