package jobs

import _ "embed"

// openAPIDocument is the OpenAPI 3.1 description of the job API, served
// at GET /api/openapi.json.
//
//go:embed openapi.json
var openAPIDocument []byte
