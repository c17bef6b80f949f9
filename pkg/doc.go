// Package pkg holds nothing itself: its sub-packages are the domain types that
// more than one QYAI service shares (the usage event, API keys, tiers, prices,
// the OpenAI-shaped error), how the services authenticate to NATS, and the
// environment reader and the logger every service uses.
package pkg
