"""Listeners' TLS, SASL, principals, the ACL authorizer, quotas, the audit trail."""
