// Package pkg holds nothing itself: its sub-packages are the domain types that
// more than one QYAI service shares (the usage event, API keys, tiers, prices,
// the OpenAI-shaped error), the environment reader and the logger every
// service uses, and the test harness that starts real servers.
package pkg
