"""What every layer shares: errors, the parameter declaration, objectives, scenarios, the
content-addressed cache and its hashes, plug-in loading, the machine fingerprint."""
