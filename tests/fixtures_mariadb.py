"""MariaDB fixtures (placeholder until the MariaDB backend lands)."""
