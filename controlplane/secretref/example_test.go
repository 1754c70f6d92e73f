package secretref_test

import (
	"fmt"

	"github.com/secretplane/secretplane/controlplane/secretref"
)

func ExampleParse() {
	r, err := secretref.Parse("VAULT://secret/payments/db?version=3&namespace=team-a#password")
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(r)
	fmt.Println(r.VaultMount(), r.VaultPath(), r.Field, r.Version)

	_, err = secretref.Parse("vault://admin:hunter2@secret/payments/db")
	fmt.Println(err)
	// Output:
	// vault://secret/payments/db?namespace=team-a&version=3#password
	// secret payments/db password 3
	// invalid SecretRef: locator: credentials (user@ or user:password@) are not allowed in a ref; the backend authenticates on its own
}

func ExampleRedact() {
	fmt.Println(secretref.Redact("aws-sm://prod/db?stage=AWSPREVIOUS#password"))
	fmt.Println(secretref.Redact("vault://admin:hunter2@secret/payments/db"))
	// Output:
	// aws-sm://prod/db?stage=AWSPREVIOUS#password
	// vault://[redacted 40 bytes]
}

func ExampleFromCloudFormation() {
	r, _ := secretref.FromCloudFormation("{{resolve:secretsmanager:prod/db:SecretString:password:AWSPREVIOUS}}")
	fmt.Println(r)
	// Output: aws-sm://prod/db?stage=AWSPREVIOUS#password
}
